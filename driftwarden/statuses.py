"""The lifecycle states the store, the API and the CLI share (a module of its own, so the CLI
can offer them without importing SQLAlchemy).

>>> INCIDENT_STATUSES[0], VERSION_STATUSES[-1]
('open', 'retired')
"""

VERSION_STATUSES = ("registered", "shadow", "canary", "live", "retired")
INCIDENT_STATUSES = ("open", "escalated", "acknowledged", "resolved")
