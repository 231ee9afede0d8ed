"""Writes the synthetic transcripts that `crawldeck demo` runs on.

`python -m engine.simulation.make_transcripts [--out DIR] [--seed N]` writes 150
meeting, interview and podcast transcripts: about 100 `.txt`, 25 `.md` and 25
`.jsonl` (one `{"ts", "speaker", "text"}` object a line), 2-6 KB each.  The
output depends only on the seed, so the bundled folder can be regenerated
byte for byte; the dialogue is assembled from topic phrase banks, so each
transcript talks about something different and summaries differ.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

# The phrase banks are prose; wrapping them would only make them harder to read.
# ruff: noqa: E501

DEFAULT_DIRECTORY = Path(__file__).parents[1] / "sample" / "transcripts"
DEFAULT_SEED = 20240611
COUNT = 150
_SUFFIX_MIX = ("txt",) * 100 + ("md",) * 25 + ("jsonl",) * 25
_GENERATED_NAME = re.compile(r"^\d{3}-[a-z0-9-]+\.(txt|md|jsonl)$")


@dataclass(frozen=True, slots=True)
class Topic:
    """What a transcript is about: the words and claims its speakers use."""

    slug: str
    title: str
    terms: tuple[str, ...]
    facts: tuple[str, ...]
    questions: tuple[str, ...]
    decisions: tuple[str, ...]
    kinds: tuple[str, ...] = ("meeting", "meeting", "meeting", "interview", "podcast")


@dataclass(frozen=True, slots=True)
class Speaker:
    name: str
    role: str

    @property
    def first(self) -> str:
        return self.name.split()[0]


@dataclass(frozen=True, slots=True)
class Turn:
    seconds: int
    speaker: Speaker
    text: str

    @property
    def timestamp(self) -> str:
        hours, rest = divmod(self.seconds, 3600)
        return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True, slots=True)
class Transcript:
    kind: str  # meeting, interview or podcast
    topic: Topic
    title: str
    day: date
    speakers: tuple[Speaker, ...]
    turns: tuple[Turn, ...]
    show: str = ""


TOPICS: tuple[Topic, ...] = (
    Topic(
        "payments-outage",
        "the payments outage postmortem",
        (
            "card authorisation",
            "payment gateway",
            "retry queue",
            "idempotency key",
            "settlement file",
        ),
        (
            "The gateway started timing out at {clock}, and by {clock2} about {pct}% of card authorisations were failing.",
            "The root cause was a connection pool of {n} that the new fraud check exhausted under peak load.",
            "Our retry queue made it worse, because every client retried without an idempotency key and we double-charged {small} customers.",
            "Support received {big} tickets in the first two hours, most of them about duplicate charges.",
            "We refunded the duplicate charges by the next morning, and finance reconciled the settlement file on {weekday}.",
            "The alert fired after eleven minutes, which is far too late for an outage that visible.",
            "Rolling back the fraud check took {minutes} minutes because the feature flag was tied to the deploy.",
            "The status page went up late, so customers learned about it from social media first.",
        ),
        (
            "Why did the circuit breaker not open when the error rate crossed the threshold?",
            "Do we know exactly how many customers were charged twice?",
            "Who owns the payment gateway's connection pool settings today?",
            "Could we have caught this in the load test?",
        ),
        (
            "every payment request carries an idempotency key by the end of the month",
            "the fraud check gets its own connection pool and a kill switch independent of deploys",
            "we page on authorisation failure rate above {pct_small}% for two minutes",
        ),
    ),
    Topic(
        "postgres-migration",
        "the migration from MySQL to Postgres",
        ("replication lag", "dual writes", "schema diff", "cutover window", "read replica"),
        (
            "The dual-write phase has been running for {n} days and the nightly diff found {small} mismatched rows.",
            "Most mismatches come from timestamp precision: MySQL truncates microseconds and Postgres keeps them.",
            "Replication lag on the new read replica peaks at {seconds} seconds during the batch import.",
            "The orders table is {gb} gigabytes, so a full copy takes roughly {hours} hours.",
            "We rewrote {n} queries that relied on MySQL's loose GROUP BY behaviour.",
            "The cutover window is planned for {weekday} night between one and four in the morning.",
            "Rollback means flipping the connection string back, as long as dual writes are still on.",
            "The ORM upgrade surfaced a handful of implicit casts that Postgres now rejects.",
        ),
        (
            "Are we confident the sequence values will be correct after the cutover?",
            "What happens to in-flight transactions during the switch?",
            "Has anyone tested the rollback path end to end?",
            "Do the analytics jobs still read from the old replica?",
        ),
        (
            "we keep dual writes on for two full weeks after cutover",
            "the analytics team moves its jobs to the new replica before {weekday}",
            "the cutover gets a dress rehearsal on staging with production-sized data",
        ),
    ),
    Topic(
        "cloud-costs",
        "reducing the Kubernetes bill",
        ("node pool", "spot instances", "resource requests", "autoscaler", "egress traffic"),
        (
            "Our cloud bill went from {money}k to {money2}k a month over two quarters.",
            "Almost half the cost is idle capacity, because resource requests are set three times higher than actual usage.",
            "Moving the batch workers to spot instances would save about {pct}% on that node pool.",
            "Egress traffic between zones costs us more than the database does.",
            "The cluster autoscaler never scales down at night because of {n} pods with local storage.",
            "We found {small} forgotten staging environments that nobody has touched since spring.",
            "Right-sizing the requests on the API deployment alone freed up {n} nodes.",
            "Reserved instances only make sense for the baseline, not for the spiky workloads.",
        ),
        (
            "Which teams own the staging environments we found?",
            "Can the batch workers tolerate being interrupted every few hours?",
            "How much of the egress is the logging pipeline?",
            "Is anyone tracking cost per customer yet?",
        ),
        (
            "every namespace gets a cost owner and a monthly budget alert",
            "batch workers move to spot instances after a two-week trial",
            "idle staging environments are deleted automatically after fourteen days",
        ),
    ),
    Topic(
        "pricing-change",
        "the new pricing tiers",
        ("usage-based tier", "seat price", "annual discount", "grandfathering", "upgrade path"),
        (
            "The proposal replaces our three plans with a free tier, a team tier at {money} dollars a seat and usage-based enterprise pricing.",
            "In the survey, {pct}% of small customers said they would rather pay per project than per seat.",
            "Grandfathering existing customers for twelve months costs us about {money2}k in expected revenue.",
            "Sales is worried that the usage-based tier makes quotes harder to predict for procurement teams.",
            "Our closest competitor raised prices by {pct_small}% last quarter and lost very little share.",
            "The annual discount is currently twenty percent, which is more generous than anyone else in the market.",
            "Finance modelled three scenarios, and even the pessimistic one is revenue neutral after {n} months.",
            "The upgrade path from free to team has to happen inside the product, without talking to sales.",
        ),
        (
            "How do we communicate this to customers on legacy plans?",
            "What does the usage meter actually count?",
            "Will the sales team's commission plan change with it?",
            "Do we launch in all regions at once?",
        ),
        (
            "the new tiers launch for new customers on the first of {month}",
            "existing customers keep their price for twelve months with a clear notice",
            "the annual discount drops to fifteen percent",
        ),
    ),
    Topic(
        "churn-analysis",
        "the customer churn analysis",
        ("cohort", "activation rate", "net revenue retention", "health score", "exit survey"),
        (
            "Logo churn was {pct_small}% last quarter, but net revenue retention is still above one hundred percent.",
            "Customers who never invite a second user churn at almost three times the rate of the others.",
            "The {month} cohort is the worst we have seen, and most of it came from one paid campaign.",
            "In the exit survey the top reason is price, but the free-text answers mostly talk about missing integrations.",
            "The health score predicts churn about as well as a coin flip, so nobody in customer success trusts it.",
            "Accounts with a onboarding call in the first week renew {pct}% of the time.",
            "We lose {small} mid-market accounts a month to the competitor's bundled offer.",
            "Usage usually drops off about {n} weeks before the cancellation, so there is time to act.",
        ),
        (
            "Can we get the usage drop-off signal into the CRM?",
            "Is the campaign cohort really worse, or just smaller?",
            "What would it cost to offer every new account an onboarding call?",
            "Which integrations come up most often in the survey?",
        ),
        (
            "customer success gets a weekly list of accounts whose usage fell by half",
            "the health score is rebuilt around seats invited and weekly active projects",
            "we pilot onboarding calls for every account above ten seats",
        ),
    ),
    Topic(
        "mobile-release",
        "the mobile app release plan",
        ("release train", "crash-free rate", "feature flag", "app review", "staged rollout"),
        (
            "Version {version} is feature complete, but the crash-free rate on Android is only {ninety} percent.",
            "Most crashes come from the new image picker on older Samsung devices.",
            "The staged rollout starts at five percent and doubles every day if the crash rate holds.",
            "App review rejected the last build because the subscription screen didn't show the renewal terms.",
            "The offline mode is behind a feature flag, so we can ship the code and turn it on later.",
            "Our release train leaves every second {weekday}, and this one is already {n} days late.",
            "QA found {small} blocking bugs in the checkout flow, and two are fixed already.",
            "Push notification opt-in fell after we moved the prompt to the first screen.",
        ),
        (
            "Do we hold the whole release for the Android crash?",
            "Who signs off on the subscription screen copy?",
            "Can we ship offline mode dark and enable it for beta testers?",
            "Is the iOS build ready for review today?",
        ),
        (
            "the release ships with the image picker behind a flag on Android",
            "the notification prompt moves back to after the first completed task",
            "the next train is cut on {weekday} regardless of scope",
        ),
    ),
    Topic(
        "data-engineer-hire",
        "the senior data engineer interview",
        ("data pipeline", "orchestration", "data contract", "backfill", "warehouse model"),
        (
            "At my last company I owned the pipelines that loaded about {big} events a day into the warehouse.",
            "We moved from cron jobs to an orchestrator, which mostly helped with backfills and visibility.",
            "The hardest incident I remember was a silent schema change upstream that broke revenue reporting for a week.",
            "After that we introduced data contracts, so producers had to version any change to an event.",
            "I usually start a new model by talking to the people who will read the dashboard, not by writing SQL.",
            "Testing data is different from testing code, because the input changes every day.",
            "I mentored {small} junior engineers and ran the team's design reviews for two years.",
            "I'd rather have a boring pipeline that runs every night than a clever one nobody can debug.",
        ),
        (
            "Can you walk me through a pipeline you designed from scratch?",
            "How do you decide between batch and streaming?",
            "Tell me about a time a stakeholder disagreed with your data model.",
            "How do you handle a backfill of a year of data without breaking production?",
        ),
        (
            "the candidate moves on to the system design round",
            "we ask for a reference from the previous manager",
            "the take-home exercise is skipped because the portfolio covers it",
        ),
        ("interview",),  # first-person answers only read right in an interview
    ),
    Topic(
        "onboarding-research",
        "the onboarding user research",
        ("signup flow", "empty state", "first project", "tooltip tour", "template gallery"),
        (
            "I signed up on a {weekday} evening and honestly didn't know what to do after the welcome screen.",
            "The empty state just says 'create your first project', but I didn't know what a project was in your product.",
            "The tooltip tour moved too fast, and I closed it after the second step.",
            "I would have loved a template for a weekly report, because that's literally why I signed up.",
            "It took me about {minutes} minutes to invite my colleague, because the button is hidden in settings.",
            "The pricing page made me think the free plan would expire after {n} days.",
            "Once I found the template gallery, everything clicked and I set up three boards in an hour.",
            "I compared you with two other tools, and yours was the only one that asked for a credit card up front.",
        ),
        (
            "What were you hoping to get done in the first session?",
            "Where did you get stuck, if anywhere?",
            "How did you decide which tool to try first?",
            "What would have made you invite your team sooner?",
        ),
        (
            "the template gallery becomes the first screen after signup",
            "the invite button moves to the project header",
            "the credit card requirement is dropped for the trial",
        ),
        ("interview",),  # first-person answers only read right in an interview
    ),
    Topic(
        "soc2-audit",
        "the SOC 2 audit preparation",
        ("access review", "evidence collection", "vendor risk", "change management", "auditor"),
        (
            "The auditor's fieldwork starts on {month} {day}, and we still owe evidence for {n} controls.",
            "Quarterly access reviews were done, but two of them were signed off a month late.",
            "Change management is fine for the main application, but infrastructure changes often skip the ticket.",
            "We have {small} vendors that process customer data and no risk assessment for half of them.",
            "Offboarding is the weak spot: one contractor kept access to the support tool for three weeks.",
            "The compliance tool collects evidence automatically for about {pct}% of the controls.",
            "Background checks are done for everyone hired after last {month}, but not for older employees.",
            "The auditor wants to see the incident response plan exercised at least once this year.",
        ),
        (
            "Can we run the tabletop exercise before fieldwork starts?",
            "Who signs the vendor risk assessments?",
            "Do infrastructure changes through Terraform count as reviewed changes?",
            "Is a late access review an exception or a finding?",
        ),
        (
            "offboarding is automated from the HR system within a day",
            "the tabletop exercise runs on {weekday} with the whole on-call rotation",
            "every Terraform change needs an approved pull request",
        ),
    ),
    Topic(
        "supply-chain",
        "the supplier delays",
        ("lead time", "safety stock", "purchase order", "freight forwarder", "second source"),
        (
            "Lead times from our main supplier in Shenzhen went from six weeks to {n} weeks.",
            "We are down to {small} days of safety stock on the control boards.",
            "The freight forwarder says the port congestion should ease by {month}, but they said that last quarter too.",
            "A second source in Vietnam quoted {pct_small}% higher unit cost but half the lead time.",
            "Air freight for one pallet costs about {money}k, which wipes out the margin on that batch.",
            "We have {big} units on open purchase orders that are already late.",
            "Customers with annual contracts have priority, so retail orders will be delayed first.",
            "Qualifying a new supplier takes about three months including the sample run.",
        ),
        (
            "How many retail orders are affected if we prioritise contracts?",
            "Can engineering approve an alternative capacitor to unblock the boards?",
            "What is the penalty clause on the late purchase orders?",
            "Should we start qualifying the second source now?",
        ),
        (
            "we start qualifying the Vietnamese supplier immediately",
            "safety stock on the control boards goes up to eight weeks",
            "one air freight shipment is approved for the contract customers",
        ),
    ),
    Topic(
        "warehouse-robots",
        "the warehouse robotics pilot",
        ("picking robot", "pick rate", "aisle layout", "charging station", "exception handling"),
        (
            "The pilot robots pick about {n} items an hour, compared with {n2} for an experienced picker.",
            "The robots struggle with soft packaging, so polybags still go to the manual line.",
            "We changed the aisle layout twice because the robots kept queuing at the same charging station.",
            "Exception handling is where the time goes: every jammed tote needs someone to walk over.",
            "The vendor charges per pick, which makes the business case very sensitive to volume.",
            "Night shift staff actually like the robots, because they no longer walk twelve kilometres a shift.",
            "Mis-picks dropped by {pct}% in the pilot zone, mostly thanks to the scanning step.",
            "Expanding to the whole building would need {small} more charging stations and a new network.",
        ),
        (
            "What does the pick rate look like during peak season?",
            "Can the vendor handle polybags in the next hardware version?",
            "How many people do we retrain if we expand?",
            "Does the per-pick price drop with volume?",
        ),
        (
            "the pilot extends through peak season before any expansion decision",
            "the vendor gets a list of the top fifty packaging types that fail",
            "a second charging station is installed in aisle {small}",
        ),
    ),
    Topic(
        "search-relevance",
        "the search relevance work",
        ("ranking model", "click-through rate", "zero-result query", "synonym list", "query log"),
        (
            "About {pct_small}% of searches return zero results, and most of them are typos or plural forms.",
            "The new ranking model improved click-through rate by {pct_small} points in the A/B test.",
            "Long-tail queries are still bad, because the model only learned from popular products.",
            "The synonym list was maintained by hand and has {big} entries, many of them contradictory.",
            "Merchandising wants to pin products to the top, which fights with the model's ranking.",
            "Search latency at the ninety-ninth percentile went up to {millis} milliseconds with the new model.",
            "We sampled {n} queries from the query log and had two people label the results.",
            "Filters are used in less than a third of sessions, mostly on mobile.",
        ),
        (
            "Is the latency increase acceptable for the relevance gain?",
            "Who decides when merchandising pins override the ranking?",
            "Can we fix typos before adding more synonyms?",
            "How often do we retrain the model?",
        ),
        (
            "spelling correction ships before any new synonym work",
            "pinned products are capped at three per results page",
            "the ranking model is retrained weekly from the query log",
        ),
    ),
    Topic(
        "support-assistant",
        "rolling out the AI support assistant",
        ("deflection rate", "knowledge base", "handoff", "hallucination", "ticket volume"),
        (
            "The assistant answered {big} conversations in the beta and resolved {pct}% without a human.",
            "Deflection is highest for password resets and invoice questions, and lowest for billing disputes.",
            "We found {small} answers that cited an article that doesn't exist anymore.",
            "The handoff to a human agent loses the conversation history, which annoys customers.",
            "Agents say the suggested replies save time, but they rewrite the tone almost every time.",
            "Half of the wrong answers trace back to outdated articles in the knowledge base.",
            "Ticket volume fell by {pct_small}% in the beta group while satisfaction stayed flat.",
            "Legal wants a clear notice that customers are talking to an automated assistant.",
        ),
        (
            "How do we measure a hallucination rate that we can report every week?",
            "Who keeps the knowledge base articles up to date?",
            "Should billing disputes always go to a human?",
            "What does the assistant cost per resolved conversation?",
        ),
        (
            "billing disputes always hand off to a human with the full history",
            "articles not updated for a year are excluded from the assistant's sources",
            "the beta extends to all English-speaking customers in {month}",
        ),
    ),
    Topic(
        "alert-fatigue",
        "on-call alert fatigue",
        ("pager", "runbook", "alert threshold", "on-call rotation", "error budget"),
        (
            "Last week the on-call engineer was paged {n} times, and only {small} of those needed action.",
            "Most pages come from disk usage alerts that resolve on their own within minutes.",
            "Half of the alerts have no runbook, so people just acknowledge them and wait.",
            "We're burning the error budget on the checkout service faster than any other team.",
            "The rotation has only four people, so everyone is on call every fourth week.",
            "Two people asked to leave the rotation after the last incident weekend.",
            "We could page on symptoms like failed checkouts instead of causes like CPU usage.",
            "The monitoring tool has {big} alert rules, and nobody knows who created most of them.",
        ),
        (
            "Can we delete every alert that nobody acted on in the last ninety days?",
            "Should on-call come with time off after a bad week?",
            "Who reviews new alert rules before they page someone?",
            "How do other teams keep their rotations sustainable?",
        ),
        (
            "alerts without a runbook stop paging and become tickets",
            "the rotation grows to six people by borrowing from the platform team",
            "a weekly review removes alerts that nobody acted on",
        ),
    ),
    Topic(
        "sales-pipeline",
        "the quarterly sales pipeline review",
        ("pipeline coverage", "win rate", "sales cycle", "discovery call", "procurement"),
        (
            "Pipeline coverage for next quarter is {cover} times quota, which is below our usual three.",
            "Win rate against the main competitor dropped to {pct}% this quarter.",
            "The average sales cycle grew from sixty to {n} days, mostly because procurement got involved earlier.",
            "We have {small} deals above a hundred thousand dollars that are stuck in legal review.",
            "Inbound leads from the webinar series convert twice as well as paid search.",
            "Discovery calls are too short, and we learn about security requirements far too late.",
            "The healthcare vertical closed {small} new logos, more than the whole previous year.",
            "Discounting is creeping up: the average discount on closed deals is now {pct_small}%.",
        ),
        (
            "Which of the stuck deals can realistically close this quarter?",
            "Do we need a security questionnaire in the first meeting?",
            "Should we put more budget into webinars?",
            "Who approves discounts above twenty percent?",
        ),
        (
            "discounts above twenty percent need the VP's approval",
            "security requirements are covered in every discovery call",
            "the webinar budget doubles next quarter",
        ),
    ),
    Topic(
        "retail-partnership",
        "the retail partnership negotiation",
        ("shelf space", "margin", "exclusivity", "co-marketing", "sell-through"),
        (
            "The retailer offered shelf space in {n} stores, starting with a regional test.",
            "They want a margin of {pct}%, which is higher than any channel we have today.",
            "Exclusivity for twelve months would block the deal we're discussing with the other chain.",
            "Co-marketing is included, but only if we fund half of the in-store displays.",
            "Sell-through in the test stores decides whether the rollout goes national.",
            "Their payment terms are ninety days, which hurts our cash flow during the ramp.",
            "Packaging needs to change for their shelf format, which costs about {money}k up front.",
            "Our online sales might drop a little where the product is available in stores.",
        ),
        (
            "Can we accept exclusivity for one product line only?",
            "What sell-through rate counts as success in the test?",
            "Could we negotiate sixty-day payment terms?",
            "Who pays for returns of damaged stock?",
        ),
        (
            "we counter with exclusivity limited to the starter kit",
            "the regional test runs for one quarter before any national commitment",
            "finance models the cash flow with ninety-day terms before we sign",
        ),
    ),
    Topic(
        "data-retention",
        "the GDPR data retention policy",
        ("retention period", "deletion request", "backup", "personal data", "legal hold"),
        (
            "We keep raw event logs forever today, and they contain IP addresses and email addresses.",
            "Deletion requests take {n} days on average, and the legal limit is one month.",
            "Backups are the hard part: deleting a person from every backup isn't practical.",
            "The proposal is a retention period of {months} months for logs and seven years for invoices.",
            "Marketing still has exports of customer lists on shared drives from old campaigns.",
            "We received {small} deletion requests last month, twice as many as a year ago.",
            "A legal hold has to override the automatic deletion, or we break a court order.",
            "The data map lists {big} tables, and a third of them hold personal data.",
        ),
        (
            "How do we handle deletion requests for people who are also in backups?",
            "Who approves exceptions to the retention period?",
            "Can we pseudonymise the logs instead of deleting them?",
            "Do the analytics tools copy personal data somewhere we forgot?",
        ),
        (
            "logs older than {months} months are deleted automatically",
            "backups expire after thirty-five days and deleted data is not restored",
            "shared-drive exports are removed by the end of {month}",
        ),
    ),
    Topic(
        "api-platform",
        "the public API platform",
        ("rate limit", "API key", "webhook", "SDK", "breaking change"),
        (
            "The top {small} integrations make ninety percent of all API calls.",
            "One partner polls the orders endpoint every second instead of using webhooks.",
            "Rate limits are per account today, so one noisy integration blocks the customer's other tools.",
            "Webhook delivery fails for about {pct_small}% of events, and retries are not visible to developers.",
            "The Python SDK is generated, but the JavaScript one is hand-written and {n} versions behind.",
            "We made a breaking change to the pagination last year and still get support tickets about it.",
            "Developers ask for a sandbox environment more than any other feature.",
            "API keys never expire, and some are older than the customers' current employees.",
        ),
        (
            "Should rate limits be per key instead of per account?",
            "How long do we support the old pagination?",
            "Can we show webhook delivery attempts in the dashboard?",
            "Who maintains the JavaScript SDK?",
        ),
        (
            "rate limits move to per-key budgets with clear response headers",
            "webhook attempts become visible in the developer dashboard",
            "both SDKs are generated from the same API description",
        ),
    ),
    Topic(
        "hybrid-work",
        "the hybrid work policy",
        ("office days", "desk booking", "meeting rooms", "commute", "team rituals"),
        (
            "Office attendance is around {pct}% on Tuesdays and Wednesdays and almost nobody comes on Fridays.",
            "People come in to see their team, so random office days don't work.",
            "The desk booking data shows we could give up one floor of the building.",
            "Meeting rooms are full all day, mostly with one person on a video call.",
            "New hires say they learn much faster when their team is in on the same days.",
            "A quarter of the company lives more than an hour's commute away.",
            "Team rituals like the {weekday} demo work better in person, everything else works remotely.",
            "The lease renewal is due in {month}, so we need a decision before then.",
        ),
        (
            "Should teams choose their own office days?",
            "What do we do with the floor we don't need?",
            "How do we make hybrid meetings less painful for remote people?",
            "Does the policy apply to the support team as well?",
        ),
        (
            "each team picks two anchor days and publishes them",
            "one floor is given up at the lease renewal",
            "four meeting rooms become phone booths",
        ),
    ),
    Topic(
        "series-b",
        "the Series B fundraising",
        ("runway", "valuation", "term sheet", "burn multiple", "data room"),
        (
            "We have {n} months of runway at the current burn, so we should start talking to investors now.",
            "Our burn multiple is around {multiple}, which investors will push on.",
            "Revenue grew {pct}% year over year, mostly from expanding existing accounts.",
            "The data room is half ready; the customer contracts still need to be anonymised.",
            "Two funds asked for a follow-up meeting, and one wants to talk to three reference customers.",
            "The valuation expectation from the last round is probably too high for this market.",
            "A bridge from existing investors is the fallback if the round takes longer than expected.",
            "We should show the path to profitability, not just growth.",
        ),
        (
            "Which customers are we comfortable using as references?",
            "How much dilution is acceptable?",
            "Do we cut burn before the round or after?",
            "Who updates the financial model?",
        ),
        (
            "the data room is complete before the first partner meeting",
            "hiring slows to critical roles until the term sheet is signed",
            "the board sees the updated model on {weekday}",
        ),
    ),
    Topic(
        "solar-scheduling",
        "scheduling solar installations",
        ("install crew", "site survey", "permit", "inverter", "grid connection"),
        (
            "Crews are booked {n} weeks out, but a third of the jobs get rescheduled at least once.",
            "Most reschedules happen because the permit isn't approved in time.",
            "Site surveys now use drone photos, which cut the survey from two hours to {minutes} minutes.",
            "Inverter deliveries are the new bottleneck, with {small} installations waiting for parts.",
            "The grid operator takes up to eight weeks to approve a connection in some districts.",
            "Customers get angry when nobody tells them the date has moved.",
            "One crew can do {small} residential installations a week in good weather.",
            "Winter bookings are about half of summer, so we need work for the crews.",
        ),
        (
            "Can we schedule only after the permit is approved?",
            "How do we keep customers informed automatically?",
            "Should crews do maintenance visits in winter?",
            "Which districts have the slowest grid approvals?",
        ),
        (
            "installations are scheduled only once the permit is approved",
            "customers get a text message whenever their date changes",
            "crews do battery retrofits during the winter months",
        ),
    ),
    Topic(
        "clinical-data",
        "the clinical trial data platform",
        ("case report form", "data lock", "audit trail", "site monitor", "protocol deviation"),
        (
            "The trial has {n} sites, and four of them still enter data on paper forms first.",
            "Data entry lags the patient visit by {small} days on average.",
            "Queries from the site monitors pile up because the sites don't see them in their workflow.",
            "Every change needs an audit trail, so we cannot just fix values in the database.",
            "Database lock is planned for {month}, and we have {big} open queries.",
            "Protocol deviations are tracked in a spreadsheet outside the system.",
            "The new electronic forms cut entry errors by {pct}% at the pilot sites.",
            "Regulators will inspect the audit trail, so every export has to be reproducible.",
        ),
        (
            "Can the paper sites switch to electronic forms before lock?",
            "Who closes the queries older than a month?",
            "How do we move the deviation spreadsheet into the system?",
            "Is the export pipeline validated?",
        ),
        (
            "every site moves to electronic forms within two months",
            "queries older than thirty days are escalated to the site lead",
            "deviations are recorded in the system from next week",
        ),
    ),
    Topic(
        "ci-build-times",
        "slow CI builds",
        ("build cache", "flaky test", "monorepo", "test sharding", "merge queue"),
        (
            "A full CI run takes {minutes} minutes, and engineers wait on it several times a day.",
            "The build cache hit rate dropped to {pct}% after we changed the base image.",
            "We have {small} flaky tests that fail about once in twenty runs.",
            "Test sharding across eight machines would bring the run under ten minutes.",
            "The monorepo builds everything on every change, even documentation edits.",
            "The merge queue is blocked for hours whenever a flaky test fails on main.",
            "CI costs {money}k a month, which is more than the staging environment.",
            "Developers have started skipping tests locally because the suite takes too long.",
        ),
        (
            "Can we only build what changed in the monorepo?",
            "Who owns the flaky tests?",
            "Is the merge queue worth keeping?",
            "What happened to the cache when we changed the base image?",
        ),
        (
            "flaky tests are quarantined automatically after three failures",
            "CI builds only the packages affected by a change",
            "the base image is pinned and rebuilt weekly",
        ),
    ),
    Topic(
        "campaign-results",
        "the spring campaign results",
        ("cost per acquisition", "landing page", "attribution", "retargeting", "creative"),
        (
            "The campaign brought {big} signups, but cost per acquisition was {money} dollars, almost double the target.",
            "The video creative outperformed the static ads by a wide margin on every channel.",
            "Attribution is messy: a lot of signups came through direct traffic during the campaign.",
            "The landing page converted at {pct_small}%, and the version with customer logos did better.",
            "Retargeting accounted for a third of spend and very few new customers.",
            "Podcast sponsorships were hard to measure, but the discount code was used {small} times.",
            "Signups from the campaign activated at a lower rate than organic ones.",
            "The German market responded much better than France or Spain.",
        ),
        (
            "Do we trust the attribution enough to cut retargeting?",
            "Should the next campaign focus on Germany?",
            "Why do campaign signups activate less?",
            "Can we produce more video creative in-house?",
        ),
        (
            "retargeting spend is cut by half next quarter",
            "the next campaign leads with video and customer logos",
            "activation of campaign signups is tracked separately",
        ),
    ),
    Topic(
        "accessibility-audit",
        "the accessibility audit",
        ("screen reader", "keyboard navigation", "contrast ratio", "focus order", "WCAG"),
        (
            "The audit found {n} issues, and {small} of them block screen reader users completely.",
            "The date picker can't be used with a keyboard at all.",
            "Our brand colours fail the contrast ratio on light backgrounds.",
            "Focus order jumps around in the settings page because of the custom layout.",
            "A public sector customer requires WCAG AA compliance before renewing.",
            "Most issues come from three shared components, so fixing them fixes many pages.",
            "Nobody on the team has tested the product with a screen reader before this audit.",
            "Automated checks catch about {pct_small}% of the issues; the rest needs manual testing.",
        ),
        (
            "Can design adjust the brand colours without a full rebrand?",
            "Which components do we fix first?",
            "How do we keep this from regressing?",
            "Do we need an external auditor every year?",
        ),
        (
            "the date picker is replaced with an accessible component",
            "accessibility checks run in CI for the shared components",
            "every designer and engineer spends an hour with a screen reader",
        ),
    ),
    Topic(
        "fraud-model",
        "the fraud detection model",
        ("false positive", "chargeback", "feature drift", "manual review", "risk score"),
        (
            "Chargebacks went up {pct_small}% this quarter, mostly from gift card purchases.",
            "The model blocks too many good customers: the false positive rate is around {pct_small} in a hundred.",
            "Manual review handles {big} orders a week, and the team is at capacity.",
            "Feature drift is visible since the checkout redesign changed how we collect device data.",
            "Retraining on the last three months improved precision but hurt recall on new fraud patterns.",
            "Fraudsters moved to smaller orders just under the manual review threshold.",
            "Every false positive costs us a customer who usually doesn't come back.",
            "The risk score is used in three places, and each has its own threshold.",
        ),
        (
            "Should we lower the manual review threshold?",
            "How quickly can we retrain when drift appears?",
            "Who decides the thresholds for the risk score?",
            "Can we measure how many blocked customers were legitimate?",
        ),
        (
            "drift on the device features is monitored daily",
            "gift card purchases above a small amount always get manual review",
            "one owner sets all risk score thresholds",
        ),
    ),
)

# fmt: off
FIRST_NAMES = (
    "Priya", "Marcus", "Elena", "Tomás", "Aisha", "Jonas", "Mei", "Daniel", "Sofia", "Kwame",
    "Hannah", "Luca", "Fatima", "Oliver", "Zoë", "Ravi", "Clara", "Mateo", "Ingrid", "Samuel",
    "Yuki", "Noah", "Amara", "Petr", "Leila", "Gabriel", "Nora", "Viktor", "Chloe", "Omar",
    "Jana", "Ethan", "Lucía", "Kenji", "Maya", "Felix",
)
LAST_NAMES = (
    "Shah", "Okafor", "Novák", "García", "Lindqvist", "Chen", "Brennan", "Rossi", "Haddad",
    "Müller", "Kowalski", "Tanaka", "Mensah", "Dvořák", "Fischer", "Costa", "Nguyen", "Park",
    "Andersen", "Moreau", "Hughes", "Ibrahim", "Silva", "Weber", "Kim", "O'Neill",
)
# fmt: on
ROLES = (
    "Engineering Manager",
    "Staff Engineer",
    "Product Manager",
    "Head of Finance",
    "Customer Success Lead",
    "Data Analyst",
    "Designer",
    "CTO",
    "VP Sales",
    "Operations Lead",
    "Security Engineer",
    "Support Lead",
    "Marketing Director",
    "Legal Counsel",
    "SRE",
)
SHOWS = (
    "Shipping It",
    "The Ops Hour",
    "Margins & Metrics",
    "Build Notes",
    "The Pipeline",
    "Second Shift",
    "Quiet Scale",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

MEETING_OPENERS = (
    "Okay, let's get started. The main topic today is {title}.",
    "Thanks for joining, everyone. I want to use this hour for {title}.",
    "Morning all. We only have thirty minutes, so let's go straight to {title}.",
    "Let's begin. {first}, could you give us a quick summary of where we are with {title}?",
)
INTERVIEW_OPENERS = (
    "Thanks for taking the time today. This conversation is about {title}, and there are no wrong answers.",
    "Hi, thanks for joining. I'd like to understand your experience, so we'll talk about {title}.",
    "Great to meet you. We'll spend about forty minutes on {title}, and I'll take some notes if that's fine.",
)
PODCAST_OPENERS = (
    "Welcome back to {show}. Today we're talking about {title}, and I have a great guest with me.",
    "Hello and welcome to {show}, episode {episode}. This one is all about {title}.",
    "You're listening to {show}. I'm {host}, and today's episode covers {title}.",
)
AGREEMENTS = (
    "That matches what I've seen.",
    "Yes, exactly.",
    "I agree with {first} on that.",
    "Fair point.",
    "Right, and that's the part that worries me.",
    "Mm-hm, go on.",
    "I'm not sure I agree, but let's hear the rest.",
    "That's a good question.",
    "Honestly, I didn't expect that.",
    "Sure, that makes sense.",
)
BRIDGES = (
    "To give some context, {fact_lower}",
    "The other thing is that {fact_lower}",
    "One more data point: {fact_lower}",
    "On the {term}, {fact_lower}",
    "What surprised me is that {fact_lower}",
    "I checked this morning, and {fact_lower}",
    "{fact}",
    "{fact}",
    "{fact}",
)
FOLLOW_UPS = (
    "I can pull the numbers on the {term} by {weekday}.",
    "Let me check with the team and come back to you.",
    "We discussed the {term} last week, but nothing changed since.",
    "I'd rather fix the {term} properly than patch it again.",
    "We should write that down, otherwise we'll have the same conversation next month.",
    "The {term} is the part nobody owns right now.",
    "If we do nothing, the {term} gets worse over the next quarter.",
)
DISCUSSION = (
    "The {term} came up in {small} customer calls this week.",
    "Nobody has a clear owner for the {term} yet, and that's part of the problem.",
    "I'd like to see the {term} numbers split by region before we decide anything.",
    "My worry with the {term} is the timeline, not the cost.",
    "We tried something similar with the {term} two years ago, and it stalled after a month.",
    "If the {term} slips again, we'll have to tell the leadership team on {weekday}.",
    "I talked to {first} about the {term} yesterday, and we mostly agree on the approach.",
    "The {term} isn't glamorous, but it's where most of the risk is.",
    "I'd separate the {term} from the rest of the plan so it doesn't block everything else.",
    "We have data on the {term} going back to {month}, and the trend is pretty clear.",
    "To be fair, the {term} was never designed for this volume.",
    "The spreadsheet on the {term} has {small} tabs now, which tells you something.",
    "I'm less worried about the {term} than I was a month ago.",
    "The team spent roughly {pct}% of the last sprint on the {term}.",
    "Every time we touch the {term}, something else breaks.",
    "Let's not over-engineer the {term}; a simple version would already help.",
    "Customers don't care about the {term} itself, they care that things work.",
    "There's a vendor that handles the {term} for us, but it costs about {money}k a year.",
    "I'd want {first} in the room before we change anything about the {term}.",
    "We should write down how the {term} works today before we change it.",
    "The numbers on the {term} look better than last quarter, but not by much.",
    "In my last job we handled the {term} with a weekly review, and it worked well.",
    "If I had to pick one thing to fix first, it would be the {term}.",
    "The {term} and the {term2} are connected, so we can't fix one without the other.",
    "There's a board meeting in {month}, and the {term} will come up.",
    "The quick fix for the {term} is ready; the real fix needs another {small} weeks.",
    "We keep talking about the {term2}, but the {term} is what actually hurts.",
    "I asked three teams about the {term}, and I got three different answers.",
)
QUESTIONS = (
    "Can you say more about the {term}?",
    "What's the mistake you see most often with the {term}?",
    "What would you tell a team that's starting on the {term} today?",
    "How did that affect the people on your team?",
    "What would you do differently next time?",
    "Which number do you look at every week?",
    "How did you convince leadership to invest in the {term}?",
    "Where does the {term2} fit into that?",
)
DECISION_LEADS = (
    "So the decision is that {decision}.",
    "Let's agree that {decision}.",
    "Okay, to summarise: {decision}.",
    "Then we go with this: {decision}.",
)
ACTION_LINES = (
    "Action item for {first}: {action} by {weekday}.",
    "{first} will {action} before the next meeting.",
    "I'll take that one: I'll {action} this week.",
)
ACTIONS = (
    "write up the proposal",
    "share the numbers with finance",
    "draft the customer email",
    "update the runbook",
    "talk to the vendor",
    "schedule a follow-up with legal",
    "create the tickets",
    "put together a one-page summary for the leadership team",
)
CLOSINGS = (
    "Great, thanks everyone. Notes will be in the shared folder.",
    "That's all for today. Thanks for the good discussion.",
    "Thanks, this was really helpful.",
    "Okay, let's stop here and pick it up next week.",
)
PODCAST_CLOSINGS = (
    "Thanks so much for coming on {show}. Where can people find you?",
    "That's a wrap for this episode of {show}. Thanks for listening, and see you next week.",
)


def _slots(rng: random.Random, speakers: Sequence[Speaker], topic: Topic) -> dict[str, object]:
    """Fresh values for every placeholder a phrase may use."""
    hour = rng.randint(8, 21)
    term = rng.choice(topic.terms)
    return {
        "n": rng.randint(12, 90),
        "n2": rng.randint(91, 240),
        "small": rng.randint(2, 19),
        "big": f"{rng.randint(2, 480) * 100:,}",
        "pct": rng.randint(11, 87),
        "pct_small": rng.randint(2, 9),
        "ninety": f"{rng.uniform(93.0, 98.9):.1f}",
        "money": rng.randint(15, 240),
        "money2": rng.randint(241, 900),
        "minutes": rng.randint(12, 55),
        "seconds": rng.randint(4, 95),
        "millis": rng.randint(180, 950),
        "hours": rng.randint(3, 30),
        "months": rng.choice((6, 12, 13, 18, 24)),
        "gb": rng.randint(200, 4000),
        "cover": f"{rng.uniform(1.6, 2.9):.1f}",
        "multiple": f"{rng.uniform(1.2, 3.4):.1f}",
        "version": f"{rng.randint(3, 9)}.{rng.randint(0, 14)}",
        "clock": f"{hour:02d}:{rng.randint(0, 59):02d}",
        "clock2": f"{hour + 1:02d}:{rng.randint(0, 59):02d}",
        "day": rng.randint(2, 27),
        "weekday": rng.choice(WEEKDAYS),
        "month": rng.choice(MONTHS),
        "first": rng.choice(speakers).first,
        "term": term,
        "term2": rng.choice([other for other in topic.terms if other != term]),
    }


def _fill(template: str, rng: random.Random, speakers: Sequence[Speaker], topic: Topic) -> str:
    return template.format_map(_slots(rng, speakers, topic))


class _Writer:
    """Builds one transcript's turns, keeping the clock and the running size."""

    def __init__(
        self, rng: random.Random, topic: Topic, speakers: tuple[Speaker, ...], turn_overhead: int
    ) -> None:
        self.rng = rng
        self.turn_overhead = turn_overhead
        self.topic = topic
        self.speakers = speakers
        self.turns: list[Turn] = []
        self.clock = rng.randint(2, 20)
        self.size = 0
        # Each claim is made at most twice, with the same numbers both times,
        # so long transcripts neither loop nor contradict themselves.
        self._facts = [self.fill(fact) for fact in topic.facts] * 2
        rng.shuffle(self._facts)
        self._questions = list(topic.questions)
        rng.shuffle(self._questions)

    @property
    def last_speaker(self) -> Speaker | None:
        return self.turns[-1].speaker if self.turns else None

    def say(self, speaker: Speaker, text: str) -> None:
        self.turns.append(Turn(self.clock, speaker, text))
        # Speech runs at about fifteen characters a second, plus pauses.
        self.clock += len(text) // 15 + self.rng.randint(1, 6)
        self.size += len(text.encode("utf-8")) + len(speaker.name) + self.turn_overhead

    def fill(self, template: str) -> str:
        return _fill(template, self.rng, self.speakers, self.topic)

    def anyone_but(self, *excluded: Speaker | None) -> Speaker:
        return self.rng.choice([s for s in self.speakers if s not in excluded])

    def claim(self) -> str:
        """A topic claim while unused ones remain, else general talk about its terms."""
        if not self._facts or self.rng.random() < 0.3:
            return self.fill(self.rng.choice(DISCUSSION))
        fact = self._facts.pop()
        # "The gateway…" reads "…, the gateway…" mid-sentence; "API keys…" and "I…" keep their case.
        lowered = fact[0].lower() + fact[1:] if fact[1:2].islower() else fact
        values = _slots(self.rng, self.speakers, self.topic)
        values.update(fact=fact, fact_lower=lowered)
        return self.rng.choice(BRIDGES).format_map(values)

    def question(self) -> str:
        if self._questions:
            return self._questions.pop()
        return self.fill(self.rng.choice(QUESTIONS))

    def remark(self, answering: bool) -> str:
        """One to three sentences; only a reply to a statement opens by reacting to it."""
        parts = [self.claim()]
        roll = self.rng.random()
        if not answering and roll < 0.35:
            parts.insert(0, self.fill(self.rng.choice(AGREEMENTS)))
        if roll > 0.6:
            parts.append(self.fill(self.rng.choice(FOLLOW_UPS)))
        if self.rng.random() < 0.3:
            parts.append(self.claim())
        return " ".join(parts)


def _people(rng: random.Random, count: int) -> tuple[Speaker, ...]:
    firsts = rng.sample(FIRST_NAMES, count)
    lasts = rng.sample(LAST_NAMES, count)
    roles = rng.sample(ROLES, count)
    return tuple(
        Speaker(f"{first} {last}", role)
        for first, last, role in zip(firsts, lasts, roles, strict=True)
    )


def make_transcript(
    rng: random.Random, index: int, topic: Topic, target_bytes: int, turn_overhead: int = 14
) -> Transcript:
    """One transcript about `topic`, about `target_bytes` long once rendered.

    `turn_overhead` is what the format adds to each turn besides the text and
    the speaker's name (a timestamp, punctuation, JSON keys).
    """
    kind = rng.choice(topic.kinds)
    day = date(2024, 1, 8) + timedelta(days=rng.randint(0, 300))
    show = ""
    if kind == "meeting":
        speakers = _people(rng, rng.randint(3, 6))
        title = f"{topic.title[0].upper()}{topic.title[1:]}"
    elif kind == "interview":
        speakers = _people(rng, 2)
        title = topic.title if "interview" in topic.title else f"Interview: {topic.title}"
        title = f"{title[0].upper()}{title[1:]}"
    else:
        speakers = _people(rng, rng.choice((2, 2, 3)))
        show = rng.choice(SHOWS)
        title = f"{show}, episode {index + 20}: {topic.title}"
    writer = _Writer(rng, topic, speakers, turn_overhead)
    lead, others = speakers[0], speakers[1:]
    values = {"title": topic.title, "show": show, "episode": index + 20, "host": lead.name}
    values["first"] = others[0].first
    openers = {"meeting": MEETING_OPENERS, "interview": INTERVIEW_OPENERS}.get(
        kind, PODCAST_OPENERS
    )
    writer.say(lead, rng.choice(openers).format_map(values))
    if kind == "podcast":
        guest = others[0]
        writer.say(
            guest,
            f"Thanks for having me. I work as {guest.role.lower()} at a company that has been dealing with exactly this.",
        )
    while writer.size < target_bytes:
        if kind == "meeting":
            speaker = writer.anyone_but(writer.last_speaker)
            if rng.random() < 0.2:
                writer.say(speaker, writer.question())
                writer.say(writer.anyone_but(speaker), writer.remark(answering=True))
            else:
                writer.say(speaker, writer.remark(answering=False))
        else:
            answerer = rng.choice(others)
            writer.say(lead, writer.question())
            writer.say(answerer, writer.remark(answering=True))
            if rng.random() < 0.3:
                writer.say(lead, writer.fill(rng.choice(AGREEMENTS)))
                writer.say(answerer, writer.remark(answering=False))
    if kind == "meeting":
        for decision in rng.sample(topic.decisions, rng.randint(1, 2)):
            writer.say(
                lead, writer.fill(rng.choice(DECISION_LEADS).replace("{decision}", decision))
            )
        owner = rng.choice(others)
        line = rng.choice(ACTION_LINES).replace("{action}", rng.choice(ACTIONS))
        writer.say(
            owner if line.startswith("I'll") else lead,
            writer.fill(line.replace("{first}", owner.first)),
        )
        writer.say(lead, rng.choice(CLOSINGS))
    elif kind == "podcast":
        writer.say(lead, rng.choice(PODCAST_CLOSINGS).format(show=show))
    else:
        writer.say(lead, "That's everything I wanted to ask. Thank you, this was really useful.")
    return Transcript(kind, topic, title, day, speakers, tuple(writer.turns), show)


def render_txt(transcript: Transcript) -> str:
    """Plain text: a header, then `[hh:mm:ss] Name: text` lines."""
    people = ", ".join(f"{s.name} ({s.role})" for s in transcript.speakers)
    lines = [
        f"Title: {transcript.title}",
        f"Type: {transcript.kind}",
        f"Date: {transcript.day.isoformat()}",
        f"Participants: {people}",
        "",
    ]
    lines += [f"[{t.timestamp}] {t.speaker.name}: {t.text}" for t in transcript.turns]
    return "\n".join(lines) + "\n"


def render_md(transcript: Transcript) -> str:
    """Markdown: a title, a details list, then one paragraph a turn."""
    lines = [f"# {transcript.title}", "", f"- **Date:** {transcript.day.isoformat()}"]
    lines += [f"- **{s.name}:** {s.role}" for s in transcript.speakers]
    lines += ["", "## Transcript", ""]
    for turn in transcript.turns:
        lines += [f"**{turn.speaker.name}** ({turn.timestamp}): {turn.text}", ""]
    return "\n".join(lines)


def render_jsonl(transcript: Transcript) -> str:
    """One `{"ts", "speaker", "text"}` object a line."""
    return "".join(
        json.dumps(
            {"ts": t.timestamp, "speaker": t.speaker.name, "text": t.text}, ensure_ascii=False
        )
        + "\n"
        for t in transcript.turns
    )


_RENDERERS = {"txt": render_txt, "md": render_md, "jsonl": render_jsonl}
_TURN_OVERHEAD = {"txt": 14, "md": 20, "jsonl": 46}


def write_transcripts(directory: Path, count: int = COUNT, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write `count` transcripts into `directory`, replacing earlier generated ones."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        if _GENERATED_NAME.match(old.name):
            old.unlink()
    suffixes = [_SUFFIX_MIX[i % len(_SUFFIX_MIX)] for i in range(count)]
    rng.shuffle(suffixes)
    written: list[Path] = []
    # Every topic about equally often, in a shuffled order.
    topics = [TOPICS[i % len(TOPICS)] for i in range(count)]
    rng.shuffle(topics)
    for index, (suffix, topic) in enumerate(zip(suffixes, topics, strict=True)):
        target = rng.randint(2300, 4800)
        transcript = make_transcript(rng, index, topic, target, _TURN_OVERHEAD[suffix])
        path = directory / f"{index + 1:03d}-{transcript.kind}-{topic.slug}.{suffix}"
        path.write_text(_RENDERERS[suffix](transcript), encoding="utf-8", newline="\n")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: write the transcripts and say where."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIRECTORY, help="folder to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args(argv)
    paths = write_transcripts(args.out, args.count, args.seed)
    total = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} transcripts ({total // 1024} KB) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
