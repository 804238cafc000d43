// Progressive enhancement for the staff workspace; every page works without it.
