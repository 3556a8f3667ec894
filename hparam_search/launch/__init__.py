"""Running a search: the launcher (launcher.py) supervises worker processes from a validated
plan (plan.py); they start from a fork server (fork_server.py), the first ones beside the
launcher's own start-up (starting.py), which opens the study before the first trial
(opening.py); the launcher handles signals (signals.py) and writes what a run leaves at its
end (ending.py); each worker (worker.py) loops over trials, capturing their output
(capture.py); each trial (trial.py) calls train once."""
