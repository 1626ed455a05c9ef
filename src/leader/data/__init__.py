"""Raw tables → cohort → DATA_DIR → samples."""
