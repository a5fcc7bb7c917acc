-- Which process holds a node's lease: `boot/pid-namespace/pid`. A process
-- taking over the name of one that died on the same machine and in the same
-- pid namespace (a crash and a restart, a worker the supervisor restarts)
-- sees that its pid is gone and takes the lease at once, instead of waiting
-- to see whether it still renews (broker/cluster/leases.py).
ALTER TABLE nodes ADD COLUMN process text;
