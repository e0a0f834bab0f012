-- ablate results schema, version 6: who owns a `running` row, beyond its PID. A PID is
-- reused after a reboot (or when PIDs wrap around), so a row's owner is also known by the
-- machine's boot id and the process's start time; a live process with the row's PID but
-- another identity is not its owner, and the row is taken over. Append-only: 0001 to 0005
-- are unchanged. Rows written before this have no owner and are judged by PID alone.

ALTER TABLE runs ADD COLUMN owner TEXT;          -- "<boot id>:<start time in clock ticks>"
ALTER TABLE trainings ADD COLUMN owner TEXT;
ALTER TABLE generations ADD COLUMN owner TEXT;
