"""The dashboard's screens: the dashboard itself and the dialogs it opens."""
