"""SQL for what operators look at: fleet summary, latency, engagement, retraining signals."""
