"""HF <-> Megatron conversion for the Nemotron-H family (Super, Nano): commands, I/O, audit, compare."""
