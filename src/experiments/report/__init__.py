"""What a sweep leaves when it ends, read back from its jobs' files: runs (reading them), comparison
(the seeds' statistics and sweep=compare's verdict), tables, figures (the pictures, drawn),
pictures (which pictures a sweep gets), events (its TensorBoard run) and summary (all of them, once
the jobs are done)."""
