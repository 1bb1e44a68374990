"""Training-data attribution: concept probes and scorers, Hugging Face LMs and the Sokoban planning agent."""
