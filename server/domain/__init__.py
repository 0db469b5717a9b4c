"""Pure rules of Ballast: no I/O, no framework imports. Everything else reads them from here."""
