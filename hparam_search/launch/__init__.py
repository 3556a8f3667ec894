"""Running a search: the launcher (launcher.py) supervises worker processes from a validated
plan (plan.py), starting the first ones beside its own start-up (starting.py), opening the
study before the first trial (opening.py), handling signals (signals.py) and writing what a
run leaves at its end (ending.py); each worker (worker.py) loops over trials, capturing their
output (capture.py); each trial (trial.py) calls train once."""
