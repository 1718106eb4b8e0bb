-- The loader creates one database per department, and the gateway reads them.
GRANT ALL PRIVILEGES ON *.* TO 'citygate'@'%';
