"""sluice-agent: a store-and-forward agent for gateways that send records to Sluice over HTTPS."""
