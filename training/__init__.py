"""ganserve's training side: data, networks, losses and the training run. Imports torch; never imported by service/."""
