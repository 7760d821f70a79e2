"""seqio Task and Mixture registrations. Importing this package registers them all."""
