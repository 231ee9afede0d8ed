"""The stages a chunk passes through, from an input record to a stored row.

`inputs` reads documents, `chunking` and `token_estimate` cut them into
chunks, `intake` turns documents or crawled pages into blocks of chunks,
`census` counts the input up front, `batcher` groups chunks into calls
(skipping what is already done), `dispatcher` admits and sends each call
through `prompt`, and `outcomes` turns answers and failures into rows and
retries.  `work_queue` is the bounded queue between stages.
"""
