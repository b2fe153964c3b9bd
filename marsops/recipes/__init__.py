"""Training recipes built on marsops. ``marsops.recipes.mars``: the Mars-terrain recipe that
``train.py`` runs (epoch loop, checkpoints, plots)."""
