"""The streaming service: plain-Python cores (monitors, label join, response policy,
dead-letter records) and the Faust agents that feed them."""
