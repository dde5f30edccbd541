"""Recipe factories for Nemotron 3 Super (installed as ``nemotron3_super.recipes``)."""
