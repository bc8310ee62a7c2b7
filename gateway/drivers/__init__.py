"""Protocol drivers: one module per protocol behind one small async seam (:mod:`.base`)."""
