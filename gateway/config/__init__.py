"""Site configuration and device profiles: YAML in, validated frozen models out.

``load_site(path)`` is the one entry point; it raises :class:`ConfigError` whose message names
the file, the key path and what was expected.
"""

from gateway.config.loader import ConfigError, Site, load_profile, load_site

__all__ = ["ConfigError", "Site", "load_profile", "load_site"]
