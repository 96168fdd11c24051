"""The dispatcher: validates requests and routes them to a runner lane, or rejects them."""
