"""ITX Triage: the helpdesk mailbox, classified into work orders that keep the ITX SLA."""

__version__ = "0.1.0"
