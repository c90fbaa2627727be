"""``splitproxy demo``: the whole product on an embedded default, and the demo service it runs."""
