"""Rolling policies out in environments and summarising success."""
