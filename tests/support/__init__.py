"""Helpers shared by test modules (no tests here).

A test module imports its shared helpers from here (or from the modules beside it in
``tests/``), never from another test module: tests/unit/test_suite_layout.py checks that.
"""
