"""Private parts of the `kafka` source: options, message decoding, the faust app."""
