"""`python -m bench.soak` (= `make soak`): the soak run. Mixed legitimate traffic at half the measured capacity,
through the reroute and on the listen ports, with the security review's attacks running beside it, for a given
duration; RSS and descriptors of the gateway and each instance sampled; exactly-once, sender-error, RSS-growth
and descriptor checks at the end (see bench/README.md)."""
