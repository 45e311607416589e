"""What the speed work must not have changed: each test reproduces a difference from the
earlier behaviour found by trying to break it (a shifted instant, a lost privilege, a mail
attribute, a boundary), fixed since."""
