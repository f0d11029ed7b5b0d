"""The runtime of one worker process: sockets in, the application's calls, sockets out."""
