"""The dashboard's widgets: each draws one part of a snapshot."""
