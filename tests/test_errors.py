from sslkit.errors import DataError, closest, one_line, suggestion


def test_one_line_keeps_the_original_message_of_a_worker_error():
    worker = DataError("Caught DataError in DataLoader worker process 0.\n"
                       "Original Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                       "sslkit.errors.DataError: cannot decode image a.jpg: bad\n")
    assert one_line(worker) == "cannot decode image a.jpg: bad"
    assert one_line(DataError("plain message")) == "plain message"
    assert one_line(DataError("two\nlines")) == "two lines"


def test_closest_and_suggestion():
    assert closest("mocov3", ["mocov1", "mocov2", "simclr"]) in {"mocov1", "mocov2"}
    assert closest("zzz", ["mocov1"]) is None
    assert suggestion("simclt", ["simclr", "mocov2"]) == "did you mean 'simclr'? valid: mocov2, simclr"


def test_one_line_drops_cpp_source_locations_and_collapses_whitespace():
    assert one_line(RuntimeError("/pytorch/c10/core/x.cpp:12, unexpected\n   end of  file")) == "unexpected end of file"
