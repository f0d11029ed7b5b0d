"""machida-flink: machida applications, unmodified, on Apache Flink.

The command ``machida-flink`` loads an application with the project's own
loader and plan, records what senders write in an ingress outside the job,
and runs the application's objects in Flink operators, batch by batch, with
each key's state in Flink keyed state. See docs/flink.md.
"""
