"""What the console commands share: library messages told in the command's flags."""

from trapmid_tf.cli import console


def test_flag_message_writes_each_named_flag_as_a_flag_and_keeps_other_names():
    # `verbose` and `precision` are console's own flags, defined by importing it; the other
    # names are no flag of this process (`a.b` is no single name at all).
    message = ("`verbose` must be set with `precision`; `no_flag_of_this_process` and `a.b` "
               "stay, and so does an unquoted verbose.")
    assert console.flag_message(message) == (
        "--verbose must be set with --precision; `no_flag_of_this_process` and `a.b` stay, "
        "and so does an unquoted verbose."
    )
