"""The one exception type that the command line turns into a single line on stderr and exit status 2."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do.

    Raised anywhere in the package for problems a user can fix (missing path, wrong layout, unknown
    recipe, bad override, corrupt file). `mtlcli.cli.main.main` prints it as one line and exits 2;
    `MTL_DEBUG=1` shows the traceback instead.
    """
