"""The ComfyUI dialect: API-format workflow graphs validated, planned onto sdplay jobs and followed over /ws."""
