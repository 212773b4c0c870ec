"""triggerd: decide when to retrain a model, and start the retraining.

The layers, each importing only from the layers above it in this list (tests/test_layers.py
checks every import, also those inside functions):

    model, errors          the data and the errors every layer shares
    language               expressions, globs, regex, templates, schedules, units
    config                 the config file and rule files, validated (plugin options by type
                           through `registry`)
    store                  the SQL state store: depends only on model and errors
    engine | dispatcher    deciding when a rule fires | running its jobs: peers that never
                           import each other (the runtime connects them: `runtime.flow`)
    runtime | simulate     the daemon: building, wiring, supervising sources, housekeeping,
                           reloading | the engine driven through a timeline with a manual
                           clock (`triggerd test`); neither imports the CLI. simulate builds
                           events with the built-in sources' own code (named modules)
    cli                    the `triggerd` command, over everything above

Beside them: `interfaces` (the contracts) and `plugin` (the one module a source or a backend
imports); `sources` and `backends` (plugins: `triggerd.plugin` only); `ops` (metrics, the
HTTP listener, logging, systemd notification, failpoints: over the store and the model);
`settings` (the TRIGGERD_* environment, read by the runtime and the CLI); `aio` and `clock`
(small helpers with no dependencies).

Only public names and the version live here; nothing heavy is imported.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
