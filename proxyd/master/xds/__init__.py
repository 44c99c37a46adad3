"""The xDS client in the master: subscriptions, ACK/NACK bookkeeping and their transports."""
