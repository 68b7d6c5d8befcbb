"""Generation: the opponent's samples and their store, trajectories for the exact objective, DDIM inversion."""
