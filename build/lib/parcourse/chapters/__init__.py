"""The programs behind single chapters of the book; only the book imports them.

basics, hybrid (chapter 2); errata (appendix); figures (chapter 2's concept map);
finance, video, recsys (chapter 6); memory (chapter 8); scaling (chapter 5);
launch_faults (the errors appendix and the tests); horovod_pitfalls (chapter 5).
"""
