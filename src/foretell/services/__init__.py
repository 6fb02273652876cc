"""The platform's gRPC services, one subpackage each: a servicer (`_servicer`), its database
queries (`_queries`) and its input rules (`_validate`). Which services exist, and how a process
starts them, is `foretell.composition`'s."""
