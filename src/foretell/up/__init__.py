"""`foretell up`: the whole platform on one machine, supervised from one terminal.

Order of start-up, cheapest checks first so that a mistake costs nothing:

1. take the data directory's lock (one `foretell up` per data directory);
2. check that every address we will listen on is free;
3. create the JWT signing key, render and validate the Envoy config;
4. start the embedded PostgreSQL (unless FORETELL_DATABASE_URL is set) and migrate;
5. prepare the embedded Redis (unless FORETELL_REDIS_URL is set);
6. run the children under the supervisor: the embedded Redis, the services, one worker per lane
   (builds, live runs, dry runs, replays) and Envoy; a thread waits until they all answer, then
   prints a banner.

A child that exits is started again after an exponential back-off (`_restart`), and the console
says so; one that keeps crashing is reported as crash-looping. Ctrl-C or SIGTERM stops them all,
each with the services' grace period, the embedded Redis and PostgreSQL last. Every child gets
a parent-death signal: a `kill -9` of `foretell up` leaves none of them running.

Where each part lives: `_plan` (which service process listens where), `_checks` (steps 1 and
2), `_stores` (steps 4 and 5), `_supervise` (step 6 and the exit code), `_children` (the
supervisor), `_restart` (the back-off), `_ready` (the checks the banner waits for), `_banner`,
`_console` (the terminal they share), and `_run` (the steps in order).
"""

from foretell.up._errors import AlreadyRunning, StartupError
from foretell.up._plan import ServiceProcess, plan_services
from foretell.up._run import run_up

__all__ = ["AlreadyRunning", "ServiceProcess", "StartupError", "plan_services", "run_up"]
