"""Wire types shared by the broker and device clients (pure: stdlib + msgspec)."""
