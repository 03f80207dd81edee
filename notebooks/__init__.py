"""The report notebooks, installed as package data of bonenet (setup.cfg); `bonenet report` runs them."""
