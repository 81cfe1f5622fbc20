"""One module per dashboard page, each with a ``render()`` the page script calls."""
