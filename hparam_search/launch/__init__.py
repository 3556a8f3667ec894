"""Running a search: the launcher (launcher.py) supervises worker processes, each worker
(worker.py) loops over trials, each trial (trial.py) calls train once."""
