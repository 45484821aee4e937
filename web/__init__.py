"""The customer-success workbench: the worklist API, the pages and their templates, sign-in,
and the HTTP server that serves them beside ``/metrics``."""
