"""The network front: listener and HTTP routing, connections, sessions, the room and its hub."""
