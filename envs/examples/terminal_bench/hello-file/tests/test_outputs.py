import unittest
from pathlib import Path


class HelloFileTest(unittest.TestCase):
    def test_file_content(self):
        path = Path("/work/hello.txt")
        self.assertTrue(path.is_file(), "hello.txt is missing")
        self.assertEqual(path.read_text(), "Hello, world!\n")


if __name__ == "__main__":
    unittest.main()
