"""Grafana dashboards as code and their generated JSON; imports nothing of churnwatch."""
