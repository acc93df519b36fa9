"""``gradwatch runs [DIR]``: placeholder removed below once the store exists."""
