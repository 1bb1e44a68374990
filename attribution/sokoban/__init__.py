"""The Sokoban planning agent: levels, vectorised environment, DRC agent, training, plan probes and edits."""
